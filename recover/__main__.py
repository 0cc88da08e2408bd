from recover.cli.main import main

raise SystemExit(main())
