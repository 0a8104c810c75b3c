-- Proof-of-delivery photos and signatures (tenant migration 0017) are the customer's personal
-- information: exported with their other rows, deleted by an erasure, kept as long as the
-- delivery they prove.
INSERT INTO personal_data_registry
    (scope, table_name, column_name, subject_type, data_category, sensitivity_level,
     encryption_required, anonymization_method, retention_period_days, purpose)
VALUES ('tenant', 'delivery_proof_images', 'image', 'customer', 'proof_of_delivery', 'confidential', false,
        'delete', 2557,
        'a photo of the delivered goods and the customer''s signature, shown to the order''s customer and vendor');
