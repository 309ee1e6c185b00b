"""The model: card, validation and encoding, the ONNX graph, calibration, runtime and training,
imported foreign graphs, and the states a card carries and a run measures against it (the
`reference` of the training distribution, `drift` from it).

Pure over Arrow and NumPy; nothing here knows about Ray, the plan or the output layout.
"""
