"""A small bounded mapping for per-shape caches (plan look-ups, a layer's resolved
choices): a model fed ever new input sizes must not grow them without end."""
from collections import OrderedDict


class LRU(OrderedDict):
    """A dict of at most ``maxsize`` items; assignment marks an item as recently used
    and drops the least recently used one past the bound. Look-ups stay OrderedDict's
    own (C) ``get``: a caller on a hot path marks a hit with ``move_to_end(key)``.

    Safe to share between Python threads in the way the caches are used (a lost race
    only costs a recomputation).
    """

    def __init__(self, maxsize=1024):
        super().__init__()
        self.maxsize = maxsize

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        try:
            self.move_to_end(key)
            while len(self) > self.maxsize:
                self.popitem(last=False)
        except KeyError:      # another thread evicted first
            pass

    def empty_copy(self):
        return type(self)(self.maxsize)

    def __reduce__(self):     # pickles (and deep-copies) as an empty cache of the same bound
        return (type(self), (self.maxsize,))
