"""The BERT model: config, encoder, heads, attention (dot-product and Pallas splash),
sharding rules, parameter naming and FLOP counts. Imports nothing from training.
"""
