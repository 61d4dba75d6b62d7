try:
    from genloom.core.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the CLI
    raise SystemExit(130) from None

raise SystemExit(main())
