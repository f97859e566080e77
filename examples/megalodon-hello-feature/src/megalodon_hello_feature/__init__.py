"""megalodon-hello-feature: an example third-party feature ("hello")."""
