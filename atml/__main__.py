from atml.cli import main

raise SystemExit(main())
