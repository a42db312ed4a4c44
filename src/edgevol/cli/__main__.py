from edgevol.cli.main import main

main()
