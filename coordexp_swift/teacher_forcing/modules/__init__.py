"""Built-in pipeline modules: objective ``token_ce``, ``bbox_geo``, ``coord_reg``; diagnostics ``coord_diag``,
``token_type_diag`` (registered in ``teacher_forcing.registry``)."""
