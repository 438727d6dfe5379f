"""The Ray Data jobs: read -> tokenize on CPU tasks -> score on an actor pool -> write.

run.py is the driver every job shares; rerank.py and teacher.py are the two job shapes.
"""
