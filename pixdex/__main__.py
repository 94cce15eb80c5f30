from pixdex.cli import main

main()
