from child.main import run

run()
