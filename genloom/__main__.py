from genloom.core.cli import main

raise SystemExit(main())
