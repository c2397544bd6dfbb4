from chdl.cli import main

main()
