from joblog.cli import main

main()
