"""fenji.codecs.ecg"""
