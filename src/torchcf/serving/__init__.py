"""Serving: a trained model as data (persistence), the ``Recommender`` that answers with
external ids (fold-in for new users), and the HTTP service over it."""
