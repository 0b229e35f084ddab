"""Running a case that could crash the process in a fresh Python, so that a signal (segmentation
fault, abort) or a hang fails the test instead of killing or stalling the test run."""
import subprocess
import sys
import textwrap

#: Imported before every snippet.
PRELUDE = "import mxnet as mx\nfrom mxnet import nd\nimport numpy as np\nimport dcnv2_mx\n"

#: What the wrapper prints when the snippet raised MXNetError, before the message.
_ERROR_MARK = "<<MXNetError>>"


def run_snippet(code, timeout=120):
    """Runs `code` (with `mx`, `nd`, `np` and `dcnv2_mx` imported) in a fresh Python process and
    returns the CompletedProcess (stdout and stderr as text). An MXNetError the snippet raises is
    caught and printed after a mark; the process then exits 0. Raises subprocess.TimeoutExpired
    after `timeout` seconds."""
    wrapped = (PRELUDE + "try:\n" + textwrap.indent(textwrap.dedent(code), "    ") +
               "\nexcept mx.MXNetError as error:\n"
               f"    print({_ERROR_MARK!r} + str(error), flush=True)\n")
    return subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_mxnet_error(code, *words, timeout=120):
    """Asserts that `code`, run by :func:`run_snippet`, raises an MXNetError whose message holds
    every one of `words` (plain substrings), and that the process exits normally afterwards (no
    signal, no hang, no other exception). Returns the error message."""
    proc = run_snippet(code, timeout)
    detail = f"exit status {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n" \
             f"stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, "the process died or failed: " + detail
    assert _ERROR_MARK in proc.stdout, "no MXNetError was raised: " + detail
    message = proc.stdout.split(_ERROR_MARK, 1)[1]
    for word in words:
        assert word in message, f"{word!r} is not in the error message:\n{message}"
    return message
