"""Output shared by the benchmark scripts: the tables go to stdout and, when asked, to a file."""


def emit(lines, markdown=None):
    text = "\n".join(lines) + "\n"
    print(text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text)
