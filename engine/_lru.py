"""A small bounded mapping for per-shape caches (plan look-ups, a layer's resolved
choices): a model fed ever new input sizes must not grow them without end."""
from collections import OrderedDict


class LRU(OrderedDict):
    """A dict of at most ``maxsize`` items; ``get`` and assignment mark an item as
    recently used, and the least recently used one is dropped past the bound.

    Safe to share between Python threads in the way the caches are used (a lost race
    only costs a recomputation): an item evicted between lookup and reordering is a miss.
    """

    def __init__(self, maxsize=1024):
        super().__init__()
        self.maxsize = maxsize

    def get(self, key, default=None):
        try:
            value = self[key]
            self.move_to_end(key)
        except KeyError:
            return default
        return value

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
