"""The `fenji` command line: one module per verb group, found by cli.main."""
