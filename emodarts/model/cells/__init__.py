"""The cells of the model, each mixed cell (the supernet's) beside its fixed cell (the derived network's):
cnn.py, seq.py (emoDARTS sequential cells), darts.py (the DARTS recurrent cell); schedule.py computes a mixed
cell's nodes source state by source state, cnn_grouped.py the CNN candidates of one state together."""
