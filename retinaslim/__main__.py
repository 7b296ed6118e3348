from retinaslim.cli import app

app(prog_name="retinaslim")
