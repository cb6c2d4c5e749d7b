from preflexor_local.app.cli import main

main()
