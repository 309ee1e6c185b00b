"""The model: card, validation and encoding, the ONNX graph, calibration, runtime and training.

Pure over Arrow and NumPy; nothing here knows about Ray or the output layout.
"""
