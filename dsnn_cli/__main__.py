from dsnn_cli.cli import main

raise SystemExit(main())
