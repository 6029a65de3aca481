from m2a_pipe.cli import main

main()
