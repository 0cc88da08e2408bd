from recover.cli.entry import main

raise SystemExit(main())
