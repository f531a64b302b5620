from .cli import main

main(prog_name="v2v")
