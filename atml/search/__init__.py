"""Search: samplers and pruners (:mod:`.strategy`), one worker process (:mod:`.worker`), the
coordinator of ``atml search`` (:mod:`.coordinator`) with its local worker processes
(:mod:`.local`) and progress bar (:mod:`.progress`). Import the submodules."""
