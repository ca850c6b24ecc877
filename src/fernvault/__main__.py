from fernvault.cli import main

main()
