-- 0002: core tenant tables (design doc section 1.2).
--
-- Throughout: every table carries tenant_id (checked by the row-level security of 0009),
-- timestamps are TIMESTAMPTZ, and phone numbers are VARCHAR(20) so a '+' and the 15
-- digits of an E.164 number fit.

CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    phone_number VARCHAR(20) UNIQUE NOT NULL,
    name VARCHAR(255),
    email VARCHAR(255),
    whatsapp_verified BOOLEAN DEFAULT false,
    role VARCHAR(50) NOT NULL DEFAULT 'customer',
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE vendors (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    user_id UUID REFERENCES users(id),
    business_name VARCHAR(255) NOT NULL,
    business_type VARCHAR(100),
    registration_number VARCHAR(100),
    tax_number VARCHAR(100),
    address JSONB NOT NULL,
    location GEOGRAPHY(POINT, 4326),
    operating_hours JSONB DEFAULT '{}',
    payment_methods JSONB DEFAULT '["cash"]',
    delivery_radius INTEGER DEFAULT 5000, -- meters
    minimum_order_value DECIMAL(10,2) DEFAULT 0,
    rating DECIMAL(3,2) DEFAULT 5.00,
    total_orders INTEGER DEFAULT 0,
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed: ratings are on a 0-5 scale
    CONSTRAINT valid_rating CHECK (rating BETWEEN 0 AND 5)
);

CREATE TABLE categories (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    name VARCHAR(100) NOT NULL,
    slug VARCHAR(100) UNIQUE NOT NULL,
    parent_id UUID REFERENCES categories(id),
    description TEXT,
    image_url TEXT,
    sort_order INTEGER DEFAULT 0,
    is_active BOOLEAN DEFAULT true,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE products (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): UNIQUE (vendor_id, sku) does not stop duplicate SKUs when vendor_id is NULL
    vendor_id UUID NOT NULL REFERENCES vendors(id),
    category_id UUID REFERENCES categories(id),
    sku VARCHAR(100) NOT NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT,
    price DECIMAL(10,2) NOT NULL,
    compare_at_price DECIMAL(10,2),
    cost DECIMAL(10,2),
    currency VARCHAR(3) DEFAULT 'ZAR',
    unit VARCHAR(50) DEFAULT 'each',
    weight DECIMAL(10,3),
    dimensions JSONB,
    images JSONB DEFAULT '[]',
    tags TEXT[],
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    UNIQUE(vendor_id, sku),
    -- not in the seed: prices are never negative
    CONSTRAINT non_negative_prices CHECK (price >= 0 AND compare_at_price >= 0 AND cost >= 0)
);

CREATE TABLE inventory (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): a stock row belongs to a product
    product_id UUID NOT NULL REFERENCES products(id),
    location_id UUID,
    quantity INTEGER NOT NULL DEFAULT 0,
    -- NOT NULL (seed: nullable): a NULL here passes valid_reserved and makes quantity - reserved_quantity NULL
    reserved_quantity INTEGER NOT NULL DEFAULT 0,
    reorder_point INTEGER DEFAULT 10,
    reorder_quantity INTEGER DEFAULT 50,
    last_restock_date TIMESTAMPTZ,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    CONSTRAINT positive_quantity CHECK (quantity >= 0),
    CONSTRAINT valid_reserved CHECK (reserved_quantity >= 0 AND reserved_quantity <= quantity)
);

CREATE TABLE customers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    user_id UUID REFERENCES users(id),
    first_name VARCHAR(100),
    last_name VARCHAR(100),
    date_of_birth DATE,
    gender VARCHAR(20),
    preferred_language VARCHAR(10) DEFAULT 'en',
    addresses JSONB DEFAULT '[]',
    payment_methods JSONB DEFAULT '[]',
    preferences JSONB DEFAULT '{}',
    lifetime_value DECIMAL(12,2) DEFAULT 0,
    total_orders INTEGER DEFAULT 0,
    last_order_date TIMESTAMPTZ,
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE orders (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    order_number VARCHAR(50) UNIQUE NOT NULL,
    -- NOT NULL (seed: nullable): an order always has a customer and a vendor
    customer_id UUID NOT NULL REFERENCES customers(id),
    vendor_id UUID NOT NULL REFERENCES vendors(id),
    status VARCHAR(50) NOT NULL DEFAULT 'pending',
    subtotal DECIMAL(10,2) NOT NULL,
    tax_amount DECIMAL(10,2) DEFAULT 0,
    delivery_fee DECIMAL(10,2) DEFAULT 0,
    discount_amount DECIMAL(10,2) DEFAULT 0,
    total_amount DECIMAL(10,2) NOT NULL,
    currency VARCHAR(3) DEFAULT 'ZAR',
    payment_method VARCHAR(50),
    payment_status VARCHAR(50) DEFAULT 'pending',
    delivery_address JSONB NOT NULL,
    delivery_location GEOGRAPHY(POINT, 4326),
    delivery_instructions TEXT,
    estimated_delivery_time TIMESTAMPTZ,
    actual_delivery_time TIMESTAMPTZ,
    notes TEXT,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed: amounts are never negative
    CONSTRAINT non_negative_amounts CHECK (
        subtotal >= 0 AND tax_amount >= 0 AND delivery_fee >= 0
        AND discount_amount >= 0 AND total_amount >= 0
    )
);

CREATE TABLE order_items (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): an item belongs to an order and is a product
    order_id UUID NOT NULL REFERENCES orders(id),
    product_id UUID NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    unit_price DECIMAL(10,2) NOT NULL,
    total_price DECIMAL(10,2) NOT NULL,
    discount_amount DECIMAL(10,2) DEFAULT 0,
    tax_amount DECIMAL(10,2) DEFAULT 0,
    notes TEXT,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    CONSTRAINT positive_quantity CHECK (quantity > 0),
    -- not in the seed: amounts are never negative
    CONSTRAINT non_negative_amounts CHECK (
        unit_price >= 0 AND total_price >= 0 AND discount_amount >= 0 AND tax_amount >= 0
    )
);

CREATE TABLE payments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): a payment is for an order
    order_id UUID NOT NULL REFERENCES orders(id),
    transaction_id VARCHAR(255) UNIQUE,
    gateway VARCHAR(50) NOT NULL,
    gateway_reference VARCHAR(255),
    method VARCHAR(50) NOT NULL,
    amount DECIMAL(10,2) NOT NULL,
    currency VARCHAR(3) DEFAULT 'ZAR',
    status VARCHAR(50) NOT NULL DEFAULT 'pending',
    gateway_response JSONB,
    processed_at TIMESTAMPTZ,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed
    CONSTRAINT non_negative_amount CHECK (amount >= 0)
);

-- drivers comes before deliveries (seed: after) so deliveries.driver_id can reference it.
CREATE TABLE drivers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    user_id UUID REFERENCES users(id),
    first_name VARCHAR(100) NOT NULL,
    last_name VARCHAR(100) NOT NULL,
    license_number VARCHAR(100) UNIQUE NOT NULL,
    vehicle_type VARCHAR(50) NOT NULL,
    vehicle_registration VARCHAR(50) NOT NULL,
    vehicle_make VARCHAR(100),
    vehicle_model VARCHAR(100),
    vehicle_year INTEGER,
    has_cold_storage BOOLEAN DEFAULT false,
    current_location GEOGRAPHY(POINT, 4326),
    is_available BOOLEAN DEFAULT false,
    rating DECIMAL(3,2) DEFAULT 5.00,
    total_deliveries INTEGER DEFAULT 0,
    total_earnings DECIMAL(12,2) DEFAULT 0,
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed: ratings are on a 0-5 scale
    CONSTRAINT valid_rating CHECK (rating BETWEEN 0 AND 5)
);

CREATE TABLE deliveries (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): a delivery is for an order
    order_id UUID NOT NULL REFERENCES orders(id),
    -- seed: no foreign key
    driver_id UUID REFERENCES drivers(id),
    status VARCHAR(50) NOT NULL DEFAULT 'pending',
    pickup_location GEOGRAPHY(POINT, 4326),
    pickup_address JSONB,
    dropoff_location GEOGRAPHY(POINT, 4326),
    dropoff_address JSONB,
    distance_meters INTEGER,
    estimated_duration_minutes INTEGER,
    actual_duration_minutes INTEGER,
    route_polyline TEXT,
    tracking_url TEXT,
    proof_of_delivery JSONB,
    driver_notes TEXT,
    customer_rating INTEGER,
    customer_feedback TEXT,
    metadata JSONB DEFAULT '{}',
    assigned_at TIMESTAMPTZ,
    picked_up_at TIMESTAMPTZ,
    delivered_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed: a customer rates a delivery 1 to 5
    CONSTRAINT valid_customer_rating CHECK (customer_rating BETWEEN 1 AND 5)
);

-- Indexes for performance
-- Seed's idx_users_phone is left out: UNIQUE (phone_number) already indexes it.
CREATE INDEX idx_vendors_location ON vendors USING GIST(location);
-- Seed's idx_products_vendor is left out: UNIQUE (vendor_id, sku) already leads with vendor_id.
CREATE INDEX idx_products_category ON products(category_id);
CREATE INDEX idx_products_status ON products(status);
-- Seed's idx_inventory_product is left out: the unique stock-unit key of 0004 leads with product_id.
-- Seed's idx_orders_customer is left out: idx_order_customer_status (0008) leads with customer_id.
-- idx_orders_vendor_status replaces the seed's idx_orders_vendor (vendor_id): the vendor's
-- order list filters by status and shows the newest first.
CREATE INDEX idx_orders_vendor_status ON orders(vendor_id, status, created_at DESC);
CREATE INDEX idx_orders_status ON orders(status);
CREATE INDEX idx_orders_created ON orders(created_at DESC);
CREATE INDEX idx_order_items_order ON order_items(order_id);
CREATE INDEX idx_payments_order ON payments(order_id);
CREATE INDEX idx_payments_status ON payments(status);
CREATE INDEX idx_deliveries_order ON deliveries(order_id);
CREATE INDEX idx_deliveries_driver ON deliveries(driver_id);
CREATE INDEX idx_deliveries_status ON deliveries(status);
CREATE INDEX idx_drivers_location ON drivers USING GIST(current_location);
CREATE INDEX idx_drivers_available ON drivers(is_available) WHERE is_available = true;

-- Not in the seed: indexes on foreign-key columns no other index leads with, so deleting
-- (or erasing, for POPIA) a referenced row does not scan the referencing table.
CREATE INDEX idx_vendors_user ON vendors(user_id);
CREATE INDEX idx_categories_parent ON categories(parent_id);
CREATE INDEX idx_customers_user ON customers(user_id);
CREATE INDEX idx_order_items_product ON order_items(product_id);
CREATE INDEX idx_drivers_user ON drivers(user_id);
