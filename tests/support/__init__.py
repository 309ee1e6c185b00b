"""Helpers the tests of every area share (imported as ``support.<module>``; tests/ is on
pytest's ``pythonpath``). Fixtures stay in tests/conftest.py; what is here is plain code:
servers started on loopback, driver processes and the faults done to them, generated inputs,
and checks of an OUTPUT."""
