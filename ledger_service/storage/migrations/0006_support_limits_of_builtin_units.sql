-- Built-in units have no `units` row (0005): support grant limits of USD, token, ... referenced it,
-- so SetSupportGrantLimits on a built-in unit failed the foreign key (INTERNAL). Units are validated
-- against UnitCatalog before the limits are written, as for lots.
ALTER TABLE support_grant_limits DROP CONSTRAINT support_grant_limits_tenant_id_unit_fkey;
