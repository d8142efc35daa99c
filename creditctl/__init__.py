"""creditctl: the one command-line tool of the credits engine."""
