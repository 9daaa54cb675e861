"""Entry point of the standalone executable (PyInstaller)."""

from imaging_utility.cli.main import main

raise SystemExit(main())
