"""joblog: the command line, the local stack and the schema migrations."""
