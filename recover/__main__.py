from recover.cli import main

raise SystemExit(main())
