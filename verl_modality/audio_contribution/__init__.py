"""The audio-contribution pipeline (docs/method.md §6): voters answer under silence (:mod:`.voters`), the weak / strong
split (:mod:`.filter`), and the Weak-to-Strong / Mixed-to-Strong data built from it (:mod:`.weak_to_strong`).
It runs models and rewards, so it sits above ``data``, ``models`` and ``rewards``."""
