""" Judgements on plain data: the advice checklist and the memory-limit guard.
Below the store; imports only ``heap``/``collect`` figures and ``saferepr``. """
