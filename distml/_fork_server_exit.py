"""The fork server's last preload: when the submitting process is gone, it exits without tearing its modules down.

Imported only inside multiprocessing's fork server (``distml.fork_server``). The server sees its
pipe close when the submitting process exits, and exits too; freeing scikit-learn's and pandas'
modules first would hold the submitter's stdout and stderr (which it inherited) open for a while
after the submitter itself has gone. Its forks, the workers, end through ``os._exit`` and never run this.
"""
import atexit
import os

atexit.register(os._exit, 0)
