"""The web console: signed-in pages for technicians, readers, physicians and operators,
and the built-in OHIF viewer at ``/viewer/`` (issue 13)."""
