"""megalodon-script: an example third-party executor (a shell script string run by /bin/sh)."""
