-- Built-in units (USD, EUR, token, ...) are implicit for every tenant: validated by the API layer
-- against UnitCatalog, never written on lookup (a read or a refused request must write nothing).
-- The units table keeps only what tenants define, so lots no longer reference it.
ALTER TABLE lots DROP CONSTRAINT lots_tenant_id_unit_fkey;
