"""Who may do what: users, tokens and roles (users), and what a reader may read (scope)."""
