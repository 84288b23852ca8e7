"""cfd.core: the library behind the `cfd` command, hooks and agent.

It knows no terminal: it takes bytes, paths and small interfaces and returns
plans and results. Heavy imports (pygit2, requests) live in the one module that
needs them so that a hook with nothing to do never pays for them.
"""

__version__ = "0.1.0"
