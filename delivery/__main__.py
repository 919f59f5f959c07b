from delivery.cli import main

raise SystemExit(main())
