from tunedock.cli.main import main

main()
