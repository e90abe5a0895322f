"""influence: influence functions for language models (Grosse et al. 2023) as a plain library."""
from .errors import InfluenceError
from .queries import Query, encode_queries
