"""Finance books: revenue recognition, liability, breakage, accounting journals (issue #12)."""
