-- 0004: product options and variants, inventory movements and reservations
-- (design doc section 2.2).

-- Product variants and options
CREATE TABLE product_options (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): an option belongs to a product
    product_id UUID NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    name VARCHAR(100) NOT NULL,
    values JSONB NOT NULL DEFAULT '[]',
    sort_order INTEGER DEFAULT 0,
    created_at TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE product_variants (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): UNIQUE (product_id, sku) does not stop duplicate SKUs when product_id is NULL
    product_id UUID NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    sku VARCHAR(100) NOT NULL,
    name VARCHAR(255) NOT NULL,
    options JSONB NOT NULL DEFAULT '{}',
    price DECIMAL(10,2),
    compare_at_price DECIMAL(10,2),
    cost DECIMAL(10,2),
    weight DECIMAL(10,3),
    dimensions JSONB,
    image_url TEXT,
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    UNIQUE(product_id, sku),
    -- not in the seed: prices are never negative
    CONSTRAINT non_negative_prices CHECK (price >= 0 AND compare_at_price >= 0 AND cost >= 0)
);

-- Not in the seed: stock and order lines can name the variant they are for.
ALTER TABLE inventory ADD COLUMN variant_id UUID REFERENCES product_variants(id);
ALTER TABLE order_items ADD COLUMN variant_id UUID REFERENCES product_variants(id);

-- Not in the seed: one stock row per product, variant and location, so a reservation
-- or a sale has exactly one row to decrement (NULL variant or location counts as a value).
ALTER TABLE inventory
    ADD CONSTRAINT inventory_stock_unit_key UNIQUE NULLS NOT DISTINCT (product_id, variant_id, location_id);

-- Inventory tracking
CREATE TABLE inventory_movements (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): a movement is of one stock row
    inventory_id UUID NOT NULL REFERENCES inventory(id),
    movement_type VARCHAR(50) NOT NULL, -- 'restock', 'sale', 'adjustment', 'return'
    quantity INTEGER NOT NULL,
    reference_type VARCHAR(50), -- 'order', 'return', 'adjustment'
    reference_id UUID,
    notes TEXT,
    performed_by UUID REFERENCES users(id),
    created_at TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE inventory_reservations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): a reservation holds stock of one stock row
    inventory_id UUID NOT NULL REFERENCES inventory(id),
    order_id UUID REFERENCES orders(id),
    quantity INTEGER NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    status VARCHAR(20) DEFAULT 'active',
    created_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed
    CONSTRAINT positive_quantity CHECK (quantity > 0)
);

-- Not in the seed: indexes on foreign-key columns no other index leads with.
CREATE INDEX idx_product_options_product ON product_options(product_id);
CREATE INDEX idx_inventory_variant ON inventory(variant_id);
CREATE INDEX idx_order_items_variant ON order_items(variant_id);
CREATE INDEX idx_inventory_movements_inventory ON inventory_movements(inventory_id, created_at);
CREATE INDEX idx_inventory_movements_performed_by ON inventory_movements(performed_by);
CREATE INDEX idx_inventory_reservations_inventory ON inventory_reservations(inventory_id);
CREATE INDEX idx_inventory_reservations_order ON inventory_reservations(order_id);
