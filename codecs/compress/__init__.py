"""fenji.codecs.compress"""
