from podkit.cli import main

main()
