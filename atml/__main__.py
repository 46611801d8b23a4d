from atml.cli import run

run()
