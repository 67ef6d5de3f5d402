"""Git: the only pygit2 user, project files, canonical TOML, and queries at one commit."""
